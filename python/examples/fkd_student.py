# A torchvision ResNet-18 trained in plain PyTorch on fkd's FKD loader and label store.
import sys

import torch
import torch.nn.functional as F
import torchvision

import fkd


def train(labels, data="fashion-mnist", epochs=16, num_crops=4, batch_size=128, max_steps=0):
    loader = fkd.Loader(data, labels, batch_size=batch_size, num_crops=num_crops, workers=2)
    model = torchvision.models.resnet18(num_classes=loader.num_classes)
    # 28-px grayscale images: a 3x3 stem without max-pooling, as for CIFAR.
    model.conv1 = torch.nn.Conv2d(loader.channels, 64, 3, 1, 1, bias=False)
    model.maxpool = torch.nn.Identity()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    passes = -(-epochs // num_crops)  # one pass over the images counts as num_crops epochs
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, passes * len(loader))
    losses = []
    for p in range(passes):
        loader.set_epoch(p)  # this pass's sample order and stored crops
        for images, soft_labels, _targets in loader:
            x, q = torch.from_numpy(images), torch.from_numpy(soft_labels)  # no copies
            loss = -(q * F.log_softmax(model(x), dim=1)).sum(dim=1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
            losses.append(loss.item())
            if len(losses) == max_steps:
                return model, losses
        print(f"pass {p + 1}/{passes}: loss {sum(losses[-len(loader):]) / len(loader):.4f}")
    return model, losses


if __name__ == "__main__":
    train(sys.argv[1])  # a store made by fkd label on Fashion-MNIST
